//! Micro-benchmarks of the broker's hot paths (`cargo bench`).
//!
//! - `codec`: frame splitting + method/header decoding of a buffer of publishes
//!   (`protocol::codec::parse_frame`), as the connection reader does it.
//! - `routing`: topic routing through 10,000 bindings, direct routing through
//!   10,000 bindings (`exchange::Bindings`).
//! - `queue_actor`: enqueue → dispatch → delivery through a real queue actor task,
//!   no-ack and with acks (settle) under a prefetch window.
//! - `end_to_end`: publisher and consumer over loopback TCP against an in-process
//!   broker, using warrenmqperf's client.
//! - `store`: appending batches to a queue's segment log (`FsyncMode::Never`).
//!
//! Every group is short (1 s warm-up, 3 s measurement) so the whole suite runs
//! in well under three minutes on two cores. Filter with `cargo bench -- routing`.

// warrenmqperf's wire helpers and client, shared with the load generator.
#[allow(dead_code)]
#[path = "../src/bin/warrenmqperf/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../src/bin/warrenmqperf/wire.rs"]
mod wire;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warrenmq::exchange::{Bindings, ExchangeKind};
use warrenmq::protocol::codec::{self, parse_frame, Frame};
use warrenmq::queue::{
    actor, ChannelLimiter, ConnEvent, ConnHandle, ConnShared, ConsumerSpec, QueueCmd, QueueInfo,
    Settle,
};

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .without_plots()
}

/// `n` publishes of `size`-byte bodies, as a publisher would send them.
fn publishes(n: usize, size: usize) -> Vec<u8> {
    let t = wire::PublishTemplate::new(1, "", "bench-queue", size, false, 131_072);
    let mut v = Vec::with_capacity(n * t.bytes.len());
    for _ in 0..n {
        v.extend_from_slice(&t.bytes);
    }
    v
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [16usize, 1024] {
        let n = 1000;
        let buf = publishes(n, size);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("parse_frame/publish_{size}B_x{n}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&buf[..]),
                |buf| {
                    let mut frames = 0;
                    while let Some(f) = parse_frame(buf, 131_072).expect("well-formed") {
                        if let Frame::Body(_, body) = &f {
                            black_box(body.len());
                        }
                        frames += 1;
                    }
                    assert_eq!(frames, 3 * n);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// 10,000 topic bindings: `region{0..99}.svc{0..99}.*`-shaped, a tenth with `#`.
fn topic_bindings() -> Bindings<u32> {
    let mut b = Bindings::new(ExchangeKind::Topic);
    let args = Default::default();
    for i in 0..10_000u32 {
        let key = match i % 10 {
            0 => format!("region{}.#", i / 100),
            1 => format!("*.svc{}.#", i % 100),
            _ => format!("region{}.svc{}.*", i / 100, i % 100),
        };
        b.bind(i, &key, &args);
    }
    assert_eq!(b.len(), 10_000);
    b
}

fn bench_routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(1));
    let topic = topic_bindings();
    // 1,000 distinct keys, cycled, so a routing-key cache cannot serve everything.
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("region{}.svc{}.event{}", i % 100, (i * 7) % 100, i))
        .collect();
    let mut out = Vec::with_capacity(64);
    let mut i = 0;
    g.bench_function("topic_10k_bindings/match", |b| {
        b.iter(|| {
            out.clear();
            topic.route(&keys[i % keys.len()], None, &mut out);
            i += 1;
            black_box(out.len())
        })
    });
    g.bench_function("topic_10k_bindings/no_match", |b| {
        b.iter(|| {
            out.clear();
            topic.route("nowhere.at.all", None, &mut out);
            black_box(out.len())
        })
    });
    let mut direct = Bindings::new(ExchangeKind::Direct);
    let args = Default::default();
    for i in 0..10_000u32 {
        direct.bind(i, &format!("key-{i}"), &args);
    }
    g.bench_function("direct_10k_bindings/match", |b| {
        b.iter(|| {
            out.clear();
            direct.route(black_box("key-4242"), None, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_queue_actor(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("queue_actor");
    const BATCH: usize = 64;
    const N: usize = BATCH * 160;
    g.throughput(Throughput::Elements(N as u64));
    let header = codec::content_header(16, Default::default());
    let msg = warrenmq::message::Message::new("", "q", header, Bytes::from_static(&[0; 16]));
    for (name, no_ack) in [("no_ack", true), ("ack_prefetch_1000", false)] {
        g.bench_function(format!("publish_deliver/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let queue = actor::spawn(
                        1,
                        QueueInfo {
                            name: "bench".into(),
                            vhost: "/".into(),
                            durable: false,
                            exclusive_owner: None,
                            auto_delete: false,
                            arguments: Default::default(),
                            args: Default::default(),
                        },
                        std::sync::Weak::new(),
                        Box::new(|_| {}),
                        None,
                        None,
                    );
                    let (tx, mut rx) = warrenmq::connection::inbox::inbox();
                    let shared = Arc::new(ConnShared::default());
                    let conn = ConnHandle {
                        id: 1,
                        tx,
                        shared: shared.clone(),
                    };
                    let spec = ConsumerSpec {
                        chan_key: 1,
                        tag: "ctag".into(),
                        conn: conn.clone(),
                        no_ack,
                        prefetch: if no_ack { 0 } else { 1000 },
                        exclusive: false,
                        priority: 0,
                        limiter: Arc::new(ChannelLimiter::new(shared.clone())),
                    };
                    let ok = queue.ask(|r| QueueCmd::Consume(spec, r)).await;
                    assert!(matches!(ok, Some(Ok(()))));
                    let start = Instant::now();
                    for _ in 0..iters {
                        // The "connection": counts deliveries, acks them when needed.
                        let consumer = {
                            let queue = queue.clone();
                            let shared = shared.clone();
                            async move {
                                let mut got = 0;
                                let mut events = Vec::new();
                                while got < N {
                                    rx.recv_many(&mut events, 256).await;
                                    for event in events.drain(..) {
                                        match event {
                                            ConnEvent::Deliver(ds) => {
                                                got += ds.len();
                                                shared.delivered(ds.len());
                                                if !no_ack {
                                                    let ids = ds.iter().map(|d| d.msg_id).collect();
                                                    queue.send_control(QueueCmd::Settle(
                                                        1,
                                                        ids,
                                                        Settle::Ack,
                                                    ));
                                                }
                                            }
                                            other => panic!("unexpected {other:?}"),
                                        }
                                    }
                                }
                                rx
                            }
                        };
                        let consumer = tokio::spawn(consumer);
                        for _ in 0..N / BATCH {
                            let items = (0..BATCH).map(|_| (msg.clone(), None)).collect();
                            queue.send(QueueCmd::Publish { items, conn: None }).await;
                        }
                        rx = consumer.await.expect("consumer task");
                    }
                    let elapsed = start.elapsed();
                    let _ = queue
                        .ask(|reply| QueueCmd::Delete {
                            if_unused: false,
                            if_empty: false,
                            reply,
                        })
                        .await;
                    elapsed
                })
            })
        });
    }
    g.finish();
}

/// Publishes `n` messages on `producer` and, concurrently, consumes them on
/// `consumer` (manual acks, one multiple-ack per read). `rbuf` carries partial
/// frames over to the next call.
async fn pump(
    producer: &mut tokio::net::TcpStream,
    consumer: &mut tokio::net::TcpStream,
    rbuf: &mut BytesMut,
    template: &wire::PublishTemplate,
    n: usize,
) {
    let publish = async {
        let per_write = (64 * 1024 / template.bytes.len()).max(1);
        let mut buf = Vec::with_capacity(per_write * template.bytes.len());
        let mut left = n;
        while left > 0 {
            let k = left.min(per_write);
            buf.clear();
            for _ in 0..k {
                buf.extend_from_slice(&template.bytes);
            }
            producer.write_all(&buf).await.expect("publish");
            left -= k;
        }
    };
    let consume = async {
        let mut acks = Vec::new();
        let (mut got, mut tag) = (0, 0);
        while got < n {
            rbuf.reserve(64 * 1024);
            assert!(consumer.read_buf(rbuf).await.expect("read") > 0);
            let mut pos = 0;
            while let Some((f, len)) = wire::split_frame(&rbuf[pos..]).expect("frame") {
                match f.kind {
                    wire::FRAME_METHOD
                        if wire::method_ids(f.payload) == wire::ids::BASIC_DELIVER =>
                    {
                        tag = wire::deliver_tag(f.payload).expect("tag");
                    }
                    wire::FRAME_METHOD => panic!(
                        "unexpected method {:?} ({})",
                        wire::method_ids(f.payload),
                        wire::close_reason(f.payload)
                    ),
                    // Bodies fit one frame here: a message is complete at its body frame.
                    wire::FRAME_BODY => got += 1,
                    _ => {}
                }
                pos += len;
            }
            let _ = rbuf.split_to(pos);
            if tag > 0 {
                acks.clear();
                wire::put_ack(&mut acks, 1, tag, true);
                consumer.write_all(&acks).await.expect("ack");
                tag = 0;
            }
        }
    };
    tokio::join!(publish, consume);
}

fn bench_end_to_end(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = warrenmq::Config::default();
    config.amqp.bind = "127.0.0.1".parse().unwrap();
    config.amqp.port = 0;
    config.data_dir = dir.path().to_path_buf();
    let running = rt
        .block_on(warrenmq::Server::start(config))
        .expect("broker");
    let uri =
        wire::Uri::parse(&format!("amqp://guest:guest@{}/%2f", running.amqp_addr())).expect("uri");
    let (mut producer, mut consumer, frame_max) = rt.block_on(async {
        let mut p = client::Client::connect(&uri, "bench producer")
            .await
            .expect("connect");
        p.open_channel(1).await.expect("channel");
        p.declare_queue(1, "bench-queue", false)
            .await
            .expect("declare");
        let mut c = client::Client::connect(&uri, "bench consumer")
            .await
            .expect("connect");
        c.open_channel(1).await.expect("channel");
        c.qos(1, 1000).await.expect("qos");
        c.consume(1, "bench-queue", "bench", false)
            .await
            .expect("consume");
        let frame_max = p.frame_max;
        (p.into_parts().0, c.into_parts().0, frame_max)
    });
    let mut g = c.benchmark_group("end_to_end");
    const N: usize = 20_000;
    g.throughput(Throughput::Elements(N as u64));
    let mut rbuf = BytesMut::with_capacity(256 * 1024);
    for size in [16usize, 1024] {
        let template = wire::PublishTemplate::new(1, "", "bench-queue", size, false, frame_max);
        g.bench_function(format!("loopback_publish_consume/{size}B"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        pump(&mut producer, &mut consumer, &mut rbuf, &template, N).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    drop((producer, consumer));
    rt.block_on(running.shutdown());
}

fn bench_store(c: &mut Criterion) {
    use warrenmq::store::{FsyncMode, Store, StoredMessage};
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, handle, _) = Store::open(dir.path(), FsyncMode::Never).expect("open store");
    let queue = "/bench".to_owned();
    let mut g = c.benchmark_group("store");
    const BATCH: usize = 100;
    const BATCHES: usize = 10;
    let header = codec::encode_properties(&Default::default());
    // Seqs must keep increasing across the whole log, so one counter for all sizes.
    let mut seq = 0u64;
    for size in [16usize, 1024] {
        g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
        let body = Bytes::from(vec![7u8; size]);
        g.bench_function(format!("append/{size}B_batches_of_{BATCH}"), |b| {
            b.iter(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                let first = seq;
                for i in 0..BATCHES {
                    let messages = (0..BATCH)
                        .map(|_| {
                            seq += 1;
                            StoredMessage {
                                seq,
                                header: header.clone(),
                                body: body.clone(),
                                exchange: String::new(),
                                routing_key: "bench".into(),
                                delivery_count: 0,
                                redelivered: false,
                            }
                        })
                        .collect();
                    let done = (i == BATCHES - 1).then(|| {
                        let tx = tx.clone();
                        Box::new(move |r: std::io::Result<()>| {
                            let _ = tx.send(r);
                        }) as warrenmq::store::Completion
                    });
                    handle.append(&queue, messages, done);
                }
                rx.recv().expect("completion").expect("append");
                // Ack what was written so segments are deleted and the disk stays small.
                handle.ack(&queue, (first + 1..=seq).collect());
            })
        });
    }
    g.finish();
    store.shutdown();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_codec, bench_routing, bench_queue_actor, bench_end_to_end, bench_store
}
criterion_main!(benches);
