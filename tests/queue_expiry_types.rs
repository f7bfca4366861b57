//! Queue expiry (`x-expires`) and queue types (`x-queue-type`): the rules and
//! reply texts of RabbitMQ 3.10 (streams, which WarrenMQ refuses, excepted).

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, LongString};
use lapin::BasicProperties;

static ONE_RESTART_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn opts(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    }
}

fn expires(ms: i32) -> (&'static str, AMQPValue) {
    ("x-expires", AMQPValue::LongInt(ms))
}

/// Whether the queue is gone, probed without touching it: a mandatory publish
/// to it through the default exchange comes back (a passive declare would count
/// as use and restart its expiry).
async fn gone(ch: &lapin::Channel, q: &str) -> bool {
    let confirm = ch
        .basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"probe",
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish");
    let confirmation = within("publisher confirm", confirm).await.expect("confirm");
    confirmation.take_message().is_some()
}

async fn eventually_gone(ch: &lapin::Channel, q: &str) -> bool {
    eventually(|| {
        let (ch, q) = (ch.clone(), q.to_owned());
        async move { gone(&ch, &q).await }
    })
    .await
}

// ------------------------------------------------------------------- expiry

#[tokio::test]
async fn unused_queue_is_deleted_after_x_expires() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("expires");
    ch.queue_declare(
        q.as_str().into(),
        opts(false, false, false),
        table(&[expires(100)]),
    )
    .await
    .unwrap();
    assert!(!gone(&ch, &q).await, "there right after the declare");
    assert!(
        eventually_gone(&ch, &q).await,
        "deleted once unused for 100 ms"
    );
    assert!(!queue_exists(&conn, &q).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn queue_with_a_consumer_does_not_expire_until_the_consumer_goes() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("expires-consumer");
    ch.queue_declare(
        q.as_str().into(),
        opts(false, false, false),
        table(&[expires(100)]),
    )
    .await
    .unwrap();
    let cch = channel(&conn).await;
    let mut c = consume_no_ack(&cch, &q).await;
    // Several expiry periods with a consumer (this wait is the point of the test).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!gone(&ch, &q).await, "a queue with a consumer is in use");
    assert_eq!(body_str(&next(&mut c).await), "probe");
    cch.basic_cancel(c.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(
        eventually_gone(&ch, &q).await,
        "expires once the consumer left"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn expired_durable_queue_stays_deleted_after_a_restart() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("expires-durable");
    ch.queue_declare(
        q.as_str().into(),
        opts(true, false, false),
        table(&[expires(100)]),
    )
    .await
    .unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish_confirmed_props(&ch, "", &q, b"lost with the queue", persistent).await;
    assert!(eventually_gone(&ch, &q).await);
    broker.restart().await;
    let conn = broker.lapin().await;
    assert!(!queue_exists(&conn, &q).await, "its definition was removed");
    broker.shutdown().await;
}

#[tokio::test]
async fn x_expires_must_be_positive() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("expires-bad");
    assert_amqp_error(
        ch.queue_declare(q.as_str().into(), opts(false, false, false), table(&[expires(0)])),
        406,
        &format!("PRECONDITION_FAILED - invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}"),
    )
    .await;
    broker.shutdown().await;
}

// -------------------------------------------------------------- queue types

fn qtype(t: &str) -> (&'static str, AMQPValue) {
    ("x-queue-type", long_str(t))
}

async fn declare_error(
    conn: &lapin::Connection,
    q: &str,
    o: QueueDeclareOptions,
    args: &[(&str, AMQPValue)],
) -> (u16, String) {
    let ch = channel(conn).await;
    expect_amqp_error(ch.queue_declare(q.into(), o, table(args)).await)
}

#[tokio::test]
async fn quorum_queues_must_be_durable_and_neither_exclusive_nor_auto_delete() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let q = unique("qq-props");
    let pf = |what: &str| {
        (
            406,
            format!("PRECONDITION_FAILED - invalid property '{what}' for queue '{q}' in vhost '/'"),
        )
    };
    let quorum = [qtype("quorum")];
    assert_eq!(
        declare_error(&conn, &q, opts(false, false, false), &quorum).await,
        pf("non-durable")
    );
    assert_eq!(
        declare_error(&conn, &q, opts(true, true, false), &quorum).await,
        pf("exclusive-owner")
    );
    assert_eq!(
        declare_error(&conn, &q, opts(true, false, true), &quorum).await,
        pf("auto-delete")
    );
    // RabbitMQ checks auto-delete first, then exclusive, then durable.
    assert_eq!(
        declare_error(&conn, &q, opts(false, true, true), &quorum).await,
        pf("auto-delete")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn quorum_queues_refuse_classic_only_arguments() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let q = unique("qq-args");
    for (key, value) in [
        ("x-max-priority", AMQPValue::LongInt(5)),
        ("x-queue-mode", long_str("lazy")),
    ] {
        assert_eq!(
            declare_error(&conn, &q, opts(true, false, false), &[qtype("quorum"), (key, value)]).await,
            (
                406,
                format!(
                    "PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"
                )
            )
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn quorum_queue_is_declared_and_compared_on_redeclare() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("qq");
    ch.queue_declare(
        q.as_str().into(),
        opts(true, false, false),
        table(&[qtype("quorum")]),
    )
    .await
    .expect("a durable quorum queue");
    publish_confirmed(&ch, "", &q, b"in a quorum queue").await;
    assert_eq!(drain(&ch, &q).await, bodies(["in a quorum queue"]));
    assert_eq!(
        declare_error(&conn, &q, opts(true, false, false), &[qtype("classic")]).await,
        (
            406,
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': received 'classic' but current is 'quorum'"
            )
        )
    );
    // x-cancel-on-ha-failover is a classic-queue consumer argument.
    let cch = channel(&conn).await;
    let (code, text) = expect_amqp_error(
        cch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            table(&[("x-cancel-on-ha-failover", AMQPValue::Boolean(true))]),
        )
        .await,
    );
    assert_eq!(
        (code, text),
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-cancel-on-ha-failover' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"
            )
        )
    );
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn server_named_quorum_queue_is_refused() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    assert_eq!(
        declare_error(&conn, "", opts(true, false, false), &[qtype("quorum")]).await,
        (
            406,
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
                .to_string()
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_queue_type_is_refused_with_rabbitmq_text() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let q = unique("qtype-bad");
    assert_eq!(
        declare_error(&conn, &q, opts(true, false, false), &[qtype("fifo")]).await,
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': \"unsupported queue type 'fifo'\""
            )
        )
    );
    assert_eq!(
        declare_error(&conn, &q, opts(true, false, false), &[("x-queue-type", AMQPValue::LongInt(1))]).await,
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': {{unacceptable_type,signedint}}"
            )
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn stream_queues_are_refused() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("skipped: RabbitMQ has streams");
        return;
    }
    let conn = broker.lapin().await;
    let q = unique("stream");
    assert_eq!(
        declare_error(&conn, &q, opts(true, false, false), &[qtype("stream")]).await,
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': \"unsupported queue type 'stream'\""
            )
        )
    );
    broker.shutdown().await;
}
