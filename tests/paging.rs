//! Backlogs larger than the in-memory window: a durable queue keeps only an index for
//! persistent messages behind its first `storage.queue_memory_window` messages and reads their
//! bodies back from its segment files. These tests use a tiny window so that almost every
//! message takes the paged path, and check that consumers, `basic.get`, dead-lettering and a
//! restart all see every message, in order, with its body and properties.
//!
//! Transient messages are paged out (to a page log) beyond `storage.transient_memory_window`
//! ready messages, or beyond the memory window under memory pressure; the last test forces
//! that with a tiny `resources.vm_memory_high_watermark_paging_ratio`.
//!
//! The window is a WarrenMQ setting and the tests restart the broker, so they run on the
//! in-process broker only (skipped with `WARRENMQ_TEST_URL`).

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

const WINDOW: usize = 8;

async fn start() -> Option<TestBroker> {
    if std::env::var("WARRENMQ_TEST_URL").is_ok() {
        eprintln!("skipped: needs the in-process broker (storage.queue_memory_window)");
        return None;
    }
    Some(TestBroker::start_with(|c| c.storage.queue_memory_window = WINDOW).await)
}

/// Body `i`: its number, padded to a size that varies (some above 4 KiB, which the store
/// writes by reference) so a mix-up of bodies cannot go unnoticed.
fn body(i: usize) -> Vec<u8> {
    let len = [10, 300, 5000, 64][i % 4];
    let mut b = format!("m{i:05}-").into_bytes();
    b.resize(len.max(b.len()), b'a' + (i % 26) as u8);
    b
}

fn props(i: usize) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(format!("id-{i}").into())
}

async fn durable_queue(ch: &lapin::Channel, args: FieldTable) -> String {
    let q = unique("paged");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("queue.declare");
    q
}

async fn publish_range(ch: &lapin::Channel, q: &str, range: std::ops::Range<usize>) {
    for i in range {
        publish_confirmed_props(ch, "", q, &body(i), props(i)).await;
    }
}

/// Consumes `range` in order (prefetch 10, acking each), checking bodies and properties.
async fn consume_range(conn: &lapin::Connection, q: &str, range: std::ops::Range<usize>) {
    let ch = channel(conn).await;
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch, q).await;
    for i in range {
        let d = next(&mut consumer).await;
        assert_eq!(
            String::from_utf8_lossy(&d.data[..7]),
            format!("m{i:05}-"),
            "out of order"
        );
        assert_eq!(d.data, body(i));
        assert_eq!(
            d.properties.message_id().as_ref().map(|s| s.as_str()),
            Some(format!("id-{i}").as_str())
        );
        assert_eq!(d.properties.delivery_mode(), &Some(2));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn backlog_beyond_the_window_is_delivered_in_order_with_bodies() {
    let Some(broker) = start().await else { return };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = durable_queue(&ch, no_args()).await;
    publish_range(&ch, &q, 0..400).await;
    assert_eq!(message_count(&ch, &q).await, 400);
    // basic.get of the first messages (in memory), then of paged ones further back.
    for i in 0..3 {
        let m = get(&ch, &q).await.expect("a message");
        assert_eq!(m.delivery.data, body(i));
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    consume_range(&conn, &q, 3..250).await;
    for i in 250..260 {
        let m = get(&ch, &q).await.expect("a message");
        assert_eq!(m.delivery.data, body(i));
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // New messages behind a paged backlog, consumed while publishing goes on.
    publish_range(&ch, &q, 400..450).await;
    consume_range(&conn, &q, 260..450).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn paged_backlog_survives_a_restart() {
    let Some(mut broker) = start().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = durable_queue(&ch, no_args()).await;
    publish_range(&ch, &q, 0..300).await;
    consume_range(&conn, &q, 0..100).await;
    // Deliver a few without acking: they come back redelivered, at the head.
    let ch2 = channel(&conn).await;
    let unacked: Vec<_> = futures_util::future::join_all(
        (0..3).map(|_| async { get(&ch2, &q).await.expect("a message") }),
    )
    .await;
    assert_eq!(unacked[0].delivery.data, body(100));
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;

    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, &q).await, 200);
    for i in 100..103 {
        let m = get(&ch, &q).await.expect("a message");
        assert_eq!(m.delivery.data, body(i));
        assert!(
            m.delivery.redelivered,
            "message {i} was delivered before the restart"
        );
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    consume_range(&conn, &q, 103..300).await;
    broker.shutdown().await;
}

/// A restart recovers only the window with bodies; the rest comes back as index entries. Messages
/// delivered but unacked before the restart, most of them beyond the window, come back
/// redelivered and in order.
#[tokio::test]
async fn unacked_messages_beyond_the_window_come_back_redelivered_after_a_restart() {
    let Some(mut broker) = start().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = durable_queue(&ch, no_args()).await;
    publish_range(&ch, &q, 0..100).await;
    let held = channel(&conn).await;
    held.basic_qos(30, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume(&held, &q).await;
    for i in 0..30 {
        assert_eq!(next(&mut consumer).await.data, body(i));
    }
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;

    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, &q).await, 100);
    for i in 0..100 {
        let m = get(&ch, &q).await.expect("a message");
        assert_eq!(m.delivery.data, body(i), "message {i}");
        assert_eq!(
            m.delivery.redelivered,
            i < 30,
            "redelivered flag of message {i}"
        );
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(get(&ch, &q).await.is_none());
    broker.shutdown().await;
}

/// Priorities of messages recovered without their bodies come from their stored properties.
#[tokio::test]
async fn priority_order_of_a_paged_backlog_survives_a_restart() {
    let Some(mut broker) = start().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(3));
    let q = durable_queue(&ch, args).await;
    for i in 0..60 {
        let props = props(i).with_priority((i % 3) as u8);
        publish_confirmed_props(&ch, "", &q, &body(i), props).await;
    }
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;

    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let expected = (0..3)
        .rev()
        .flat_map(|p| (0..60).filter(move |i| i % 3 == p));
    for i in expected {
        let m = get(&ch, &q).await.expect("a message");
        assert_eq!(m.delivery.data, body(i), "expected message {i}");
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(get(&ch, &q).await.is_none());
    broker.shutdown().await;
}

#[tokio::test]
async fn paged_messages_are_dead_lettered_with_their_bodies() {
    let Some(broker) = start().await else { return };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let dead = durable_queue(&ch, no_args()).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(20));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    let q = durable_queue(&ch, args).await;
    // The first 60 are dropped from the head (most of them paged) and dead-lettered.
    publish_range(&ch, &q, 0..80).await;
    assert!(eventually(|| async { message_count(&ch, &dead).await == 60 }).await);
    consume_range(&conn, &dead, 0..60).await;
    consume_range(&conn, &q, 60..80).await;
    broker.shutdown().await;
}

/// Page-log directories in the store (their names start with the encoded NUL of the key).
fn page_logs(broker: &TestBroker) -> usize {
    let dir = broker.data_dir().expect("in-process").join("store/queues");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("%00page"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn transient_backlog_beyond_the_transient_window_is_paged_out() {
    if std::env::var("WARRENMQ_TEST_URL").is_ok() {
        eprintln!("skipped: needs the in-process broker");
        return;
    }
    let broker = TestBroker::start_with(|c| {
        c.storage.queue_memory_window = WINDOW;
        c.storage.transient_memory_window = 2 * WINDOW;
    })
    .await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = shared_queue(&ch).await;
    let transient = |i: usize| props(i).with_delivery_mode(1);
    for i in 0..2 * WINDOW {
        publish_confirmed_props(&ch, "", &q, &body(i), transient(i)).await;
    }
    assert_eq!(
        page_logs(&broker),
        0,
        "within the transient window: in memory"
    );
    for i in 2 * WINDOW..200 {
        publish_confirmed_props(&ch, "", &q, &body(i), transient(i)).await;
    }
    assert!(
        eventually(|| async { page_logs(&broker) == 1 }).await,
        "the backlog beyond the transient window went to a page log"
    );
    let ch2 = channel(&conn).await;
    ch2.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch2, &q).await;
    for i in 0..200 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, body(i), "message {i}");
        assert_eq!(d.properties.delivery_mode(), &Some(1));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn transient_window_zero_keeps_transient_bodies_in_memory() {
    if std::env::var("WARRENMQ_TEST_URL").is_ok() {
        eprintln!("skipped: needs the in-process broker");
        return;
    }
    let broker = TestBroker::start_with(|c| {
        c.storage.queue_memory_window = WINDOW;
        c.storage.transient_memory_window = 0;
    })
    .await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = shared_queue(&ch).await;
    for i in 0..100 {
        publish_confirmed_props(&ch, "", &q, &body(i), props(i).with_delivery_mode(1)).await;
    }
    assert_eq!(message_count(&ch, &q).await, 100);
    assert_eq!(page_logs(&broker), 0, "no memory pressure: nothing paged");
    broker.shutdown().await;
}

#[tokio::test]
async fn transient_backlog_is_paged_out_under_memory_pressure() {
    if std::env::var("WARRENMQ_TEST_URL").is_ok() {
        eprintln!("skipped: needs the in-process broker");
        return;
    }
    let mut broker = TestBroker::start_with(|c| {
        c.storage.queue_memory_window = WINDOW;
        // Paging watermark = 0.4 of RAM x 1e-9: a few bytes, always exceeded.
        c.resources.vm_memory_high_watermark_paging_ratio = 1e-9;
    })
    .await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = shared_queue(&ch).await;
    let durable = durable_queue(&ch, no_args()).await;
    let transient = |i: usize| props(i).with_delivery_mode(1);
    for i in 0..300 {
        publish_confirmed_props(&ch, "", &q, &body(i), transient(i)).await;
    }
    for i in 0..50 {
        publish_confirmed_props(&ch, "", &durable, &body(i), transient(i)).await;
    }
    assert!(
        eventually(|| async { page_logs(&broker) == 2 }).await,
        "both queues wrote a page log"
    );
    let m = get(&ch, &q).await.expect("a message");
    assert_eq!(m.delivery.data, body(0));
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let ch2 = channel(&conn).await;
    ch2.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch2, &q).await;
    for i in 1..300 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, body(i), "message {i}");
        assert_eq!(d.properties.delivery_mode(), &Some(1));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    delete_queue(&conn, &q).await;
    assert!(
        eventually(|| async { page_logs(&broker) == 1 }).await,
        "queue.delete removes the page log"
    );
    let _ = conn.close(200, "restart".into()).await;
    broker.restart().await;
    // Transient messages do not survive a restart, and neither does their page log.
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, &durable).await, 0);
    assert_eq!(page_logs(&broker), 0);
    broker.shutdown().await;
}
