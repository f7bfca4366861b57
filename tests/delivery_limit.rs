//! Poison messages: `x-delivery-limit` and the `x-delivery-count` header.
//!
//! RabbitMQ 3.10 has the limit on quorum queues only (without a default), so
//! the quorum tests run against it too; the classic-queue limit and the default
//! of 20 (RabbitMQ 4) are WarrenMQ's and skip with `WARRENMQ_TEST_URL`.

mod common;

use common::*;
use lapin::message::BasicGetMessage;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

static ONE_RESTART_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn quorum() -> (&'static str, AMQPValue) {
    ("x-queue-type", long_str("quorum"))
}

/// The `x-delivery-count` header of a fetched message, if any.
fn delivery_count(m: &BasicGetMessage) -> Option<AMQPValue> {
    m.delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
}

async fn requeue(m: BasicGetMessage) {
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("basic.nack");
}

/// The one `x-death` entry of a dead-lettered message.
fn death(m: &BasicGetMessage) -> FieldTable {
    let headers = m.delivery.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("x-death missing: {headers:?}")
    };
    let AMQPValue::FieldTable(d) = &deaths.as_slice()[0] else {
        panic!("x-death entry")
    };
    d.clone()
}

/// Fetches the message `limit + 1` times with basic.get, nacking it back each
/// time, checking `x-delivery-count`: 0, 1, 2, … (RabbitMQ's quorum dequeue
/// always adds it; consumers see it from the first redelivery on).
async fn exhaust(ch: &lapin::Channel, q: &str, limit: i64, body: &[u8]) {
    for n in 0..=limit {
        let m = get(ch, q).await.expect("the message is still there");
        assert_eq!(m.delivery.data, body);
        assert_eq!(
            delivery_count(&m),
            Some(AMQPValue::LongLongInt(n)),
            "delivery {}",
            n + 1
        );
        assert_eq!(m.delivery.redelivered, n > 0);
        requeue(m).await;
    }
}

#[tokio::test]
async fn quorum_queue_dead_letters_a_message_returned_more_than_the_limit() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let dlq = unique("poison-dlq");
    declare(&ch, &dlq, false, &[]).await;
    let q = unique("poison-qq");
    declare(
        &ch,
        &q,
        true,
        &[
            quorum(),
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str(&dlq)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"poison").await;
    exhaust(&ch, &q, 2, b"poison").await;
    let dead = eventually(|| {
        let (ch, dlq) = (ch.clone(), dlq.clone());
        async move { message_count(&ch, &dlq).await == 1 }
    })
    .await;
    assert!(dead, "the third return dead-letters it");
    assert_eq!(message_count(&ch, &q).await, 0);
    let m = get(&ch, &dlq).await.expect("dead letter");
    assert_eq!(m.delivery.data, b"poison");
    assert_eq!(
        delivery_count(&m),
        None,
        "the dead letter is the message as stored"
    );
    let d = death(&m);
    assert_eq!(d.inner().get("reason"), Some(&long_str("delivery_limit")));
    assert_eq!(d.inner().get("queue"), Some(&long_str(&q)));
    assert_eq!(d.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &dlq).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn consumer_redeliveries_carry_x_delivery_count_and_closing_the_channel_counts() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("poison-consume");
    declare(
        &ch,
        &q,
        true,
        &[quorum(), ("x-delivery-limit", AMQPValue::LongInt(1))],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"crashy").await;
    // A consumer whose channel dies holding the message: one failed delivery.
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q).await;
    let d = next(&mut c).await;
    assert!(
        d.properties
            .headers()
            .as_ref()
            .is_none_or(|h| !h.inner().contains_key("x-delivery-count")),
        "a first delivery to a consumer has no x-delivery-count"
    );
    cch.close(200, "crash".into()).await.unwrap();
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q).await;
    let d = next(&mut c).await;
    assert!(d.redelivered);
    assert_eq!(
        d.properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned()),
        Some(AMQPValue::LongLongInt(1))
    );
    // Second failure: past the limit of 1, and no dead-letter exchange: dropped.
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let gone = eventually(|| {
        let (ch, q) = (ch.clone(), q.clone());
        async move { message_count(&ch, &q).await == 0 }
    })
    .await;
    assert!(gone);
    cch.close(200, "done".into()).await.unwrap();
    assert!(get(&ch, &q).await.is_none(), "dropped, not requeued");
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn classic_queue_takes_x_delivery_limit_too() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("skipped: RabbitMQ refuses x-delivery-limit on classic queues");
        return;
    }
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let dlq = temp_queue(&ch).await;
    let q = unique("poison-classic");
    declare(
        &ch,
        &q,
        false,
        &[
            ("x-delivery-limit", AMQPValue::ShortShortUInt(3)),
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str(&dlq)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"again").await;
    exhaust(&ch, &q, 3, b"again").await;
    assert!(
        eventually(|| {
            let (ch, dlq) = (ch.clone(), dlq.clone());
            async move { message_count(&ch, &dlq).await == 1 }
        })
        .await
    );
    let m = get(&ch, &dlq).await.unwrap();
    assert_eq!(
        death(&m).inner().get("reason"),
        Some(&long_str("delivery_limit"))
    );
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn classic_queue_without_a_limit_adds_no_header() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_confirmed(&ch, "", &q, b"plain").await;
    for _ in 0..3 {
        let m = get(&ch, &q).await.unwrap();
        assert_eq!(delivery_count(&m), None);
        requeue(m).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn quorum_queue_delivery_limit_defaults_to_20() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("skipped: RabbitMQ 3.10 quorum queues have no default delivery limit");
        return;
    }
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("poison-default");
    declare(&ch, &q, true, &[quorum()]).await;
    publish_confirmed(&ch, "", &q, b"x").await;
    exhaust(&ch, &q, 20, b"x").await;
    assert!(
        eventually(|| {
            let (ch, q) = (ch.clone(), q.clone());
            async move { message_count(&ch, &q).await == 0 }
        })
        .await,
        "dropped after the 21st delivery"
    );
    // A negative limit means unlimited.
    let q2 = unique("poison-unlimited");
    declare(
        &ch,
        &q2,
        true,
        &[quorum(), ("x-delivery-limit", AMQPValue::LongInt(-1))],
    )
    .await;
    publish_confirmed(&ch, "", &q2, b"y").await;
    exhaust(&ch, &q2, 25, b"y").await;
    assert_eq!(message_count(&ch, &q2).await, 1);
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &q2).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn delivery_counts_survive_a_restart() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("poison-durable");
    declare(
        &ch,
        &q,
        true,
        &[quorum(), ("x-delivery-limit", AMQPValue::LongInt(2))],
    )
    .await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish_confirmed_props(&ch, "", &q, b"poison", persistent).await;
    // First delivery fails (nack), the second is still held at the restart.
    requeue(get(&ch, &q).await.unwrap()).await;
    let held = get(&ch, &q).await.unwrap();
    assert_eq!(delivery_count(&held), Some(AMQPValue::LongLongInt(1)));
    broker.restart().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let m = get(&ch, &q).await.expect("back after the restart");
    assert!(m.delivery.redelivered);
    assert_eq!(
        delivery_count(&m),
        Some(AMQPValue::LongLongInt(2)),
        "both earlier deliveries count"
    );
    requeue(m).await;
    assert!(
        eventually(|| {
            let (ch, q) = (ch.clone(), q.clone());
            async move { message_count(&ch, &q).await == 0 }
        })
        .await,
        "third failed delivery: past the limit"
    );
    // And it stays gone after another restart (the drop reached the store).
    broker.restart().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}
