//! Soft (channel-level) errors: they close only the offending channel, report the
//! exact reply code and text plus the offending method, and leave the connection
//! and its other channels working.

mod common;

use common::raw::{Enc, Outcome, RawConn};
use common::*;
use lapin::options::*;
use lapin::ExchangeKind;

#[tokio::test]
async fn soft_error_closes_only_its_channel() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let good = confirm_channel(&conn).await;
    let bad = channel(&conn).await;
    let q = temp_queue(&good).await;
    let missing = unique("missing");
    assert_amqp_error(
        bad.queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no queue '{missing}' in vhost '/'"),
    )
    .await;
    assert!(
        conn.status().connected(),
        "the connection survives a soft error"
    );
    publish_confirmed(&good, "", &q, b"fine").await;
    assert_eq!(get_body(&good, &q).await.as_deref(), Some(&b"fine"[..]));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_closed_channel_rejects_further_use_on_the_client() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let missing = unique("missing");
    let _ = ch
        .queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    assert!(
        ch.queue_declare("".into(), QueueDeclareOptions::exclusive(), no_args())
            .await
            .is_err(),
        "a channel closed by the server cannot be used"
    );
    let fresh = channel(&conn).await;
    temp_queue(&fresh).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn many_soft_errors_in_a_row_do_not_affect_the_connection() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    for _ in 0..20 {
        let ch = channel(&conn).await;
        let missing = unique("missing");
        let err = ch
            .exchange_declare(
                missing.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            )
            .await
            .expect_err("missing exchange");
        assert_eq!(amqp_error(&err).map(|e| e.0), Some(404));
    }
    let ch = channel(&conn).await;
    temp_queue(&ch).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn async_soft_error_on_one_amqprs_channel_leaves_a_sibling_consumer_running() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (good, _good_events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&good).await;
    let (_, mut deliveries) = amqprs_consume(&good, &q, true).await;
    let (bad, mut bad_events) = amqprs_channel(&conn).await;
    bad.basic_ack(amqprs::channel::BasicAckArguments::new(1, false))
        .await
        .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut bad_events).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 1")
    );
    good.basic_publish(
        amqprs::BasicProperties::default(),
        b"alive".to_vec(),
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    assert_eq!(amqprs_body(&amqprs_next(&mut deliveries).await), b"alive");
    conn.close().await.unwrap();
    broker.shutdown().await;
}

/// Opens a raw connection with channel 1, sends one method on it and returns
/// the channel.close reason, checking the connection is still usable after.
async fn raw_soft_error(
    broker: &TestBroker,
    class: u16,
    method: u16,
    args: Vec<u8>,
) -> common::raw::CloseReason {
    let (mut c, _) = RawConn::open_connection(broker).await;
    c.open_channel(1).await;
    c.open_channel(2).await;
    c.send_method(1, class, method, &args).await;
    let reason = match c.read_outcome().await {
        Outcome::ChannelClose(1, r) => r,
        other => panic!("expected channel.close on channel 1, got {other:?}"),
    };
    // Channel 2 still works.
    let declare = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    c.send_method(2, 50, 10, &declare).await;
    c.expect_method(2, 50, 11).await;
    reason
}

#[tokio::test]
async fn raw_publish_to_a_missing_exchange_blames_basic_publish() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    let missing = unique("missing");
    let publish = Enc::new()
        .u16(0)
        .short_str(&missing)
        .short_str("k")
        .u8(0)
        .build();
    c.send(&common::raw::method_frame(1, 60, 40, &publish))
        .await;
    c.send(&common::raw::header_frame(1, 1)).await;
    c.send(&common::raw::frame(common::raw::FRAME_BODY, 1, b"x"))
        .await;
    match c.read_outcome().await {
        Outcome::ChannelClose(1, r) => {
            assert_eq!(r.code, 404);
            assert_eq!(
                r.text,
                format!("NOT_FOUND - no exchange '{missing}' in vhost '/'")
            );
            assert_eq!((r.class_id, r.method_id), (60, 40));
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn raw_queue_delete_if_empty_blames_queue_delete() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    let q = unique("q");
    let declare = Enc::new()
        .u16(0)
        .short_str(&q)
        .u8(0b0000_0100)
        .empty_table()
        .build();
    c.send_method(1, 50, 10, &declare).await;
    c.expect_method(1, 50, 11).await;
    let publish = Enc::new().u16(0).short_str("").short_str(&q).u8(0).build();
    c.send(&common::raw::method_frame(1, 60, 40, &publish))
        .await;
    c.send(&common::raw::header_frame(1, 1)).await;
    c.send(&common::raw::frame(common::raw::FRAME_BODY, 1, b"x"))
        .await;
    // queue.delete if-empty (bit 1)
    let delete = Enc::new().u16(0).short_str(&q).u8(0b0000_0010).build();
    c.send_method(1, 50, 40, &delete).await;
    match c.read_outcome().await {
        Outcome::ChannelClose(1, r) => {
            assert_eq!(r.code, 406);
            assert_eq!(
                r.text,
                format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
            );
            assert_eq!((r.class_id, r.method_id), (50, 40));
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn raw_bind_to_a_missing_queue_blames_queue_bind() {
    let broker = TestBroker::start().await;
    let missing = unique("missing");
    let args = Enc::new()
        .u16(0)
        .short_str(&missing)
        .short_str("amq.direct")
        .short_str("k")
        .u8(0)
        .empty_table()
        .build();
    let r = raw_soft_error(&broker, 50, 20, args).await;
    assert_eq!(r.code, 404);
    assert_eq!(
        r.text,
        format!("NOT_FOUND - no queue '{missing}' in vhost '/'")
    );
    assert_eq!((r.class_id, r.method_id), (50, 20));
    broker.shutdown().await;
}

#[tokio::test]
async fn raw_consume_on_a_missing_queue_blames_basic_consume() {
    let broker = TestBroker::start().await;
    let missing = unique("missing");
    let args = Enc::new()
        .u16(0)
        .short_str(&missing)
        .short_str("")
        .u8(0)
        .empty_table()
        .build();
    let r = raw_soft_error(&broker, 60, 20, args).await;
    assert_eq!(r.code, 404);
    assert_eq!(
        r.text,
        format!("NOT_FOUND - no queue '{missing}' in vhost '/'")
    );
    assert_eq!((r.class_id, r.method_id), (60, 20));
    broker.shutdown().await;
}

#[tokio::test]
async fn raw_unknown_delivery_tag_blames_basic_ack() {
    let broker = TestBroker::start().await;
    let args = Enc::new().u64(5).u8(0).build();
    let r = raw_soft_error(&broker, 60, 80, args).await;
    assert_eq!(
        (r.code, r.text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 5")
    );
    assert_eq!((r.class_id, r.method_id), (60, 80));
    broker.shutdown().await;
}

#[tokio::test]
async fn raw_tx_commit_without_select_blames_tx_commit() {
    let broker = TestBroker::start().await;
    let r = raw_soft_error(&broker, 90, 20, Vec::new()).await;
    assert_eq!(
        (r.code, r.text.as_str()),
        (406, "PRECONDITION_FAILED - channel is not transactional")
    );
    assert_eq!((r.class_id, r.method_id), (90, 20));
    broker.shutdown().await;
}

#[tokio::test]
async fn raw_reserved_exchange_name_blames_exchange_declare() {
    let broker = TestBroker::start().await;
    let x = format!("amq.{}", unique("x"));
    let args = Enc::new()
        .u16(0)
        .short_str(&x)
        .short_str("direct")
        .u8(0)
        .empty_table()
        .build();
    let r = raw_soft_error(&broker, 40, 10, args).await;
    assert_eq!(r.code, 403);
    assert_eq!(
        r.text,
        format!("ACCESS_REFUSED - exchange name '{x}' contains reserved prefix 'amq.*'")
    );
    assert_eq!((r.class_id, r.method_id), (40, 10));
    broker.shutdown().await;
}
