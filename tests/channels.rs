//! Channels: many per connection, channel.flow, closing and reopening.

mod common;

use common::raw::{method_frame, Dec, Enc, Outcome, RawConn};
use common::*;
use lapin::options::*;

#[tokio::test]
async fn a_connection_carries_many_independent_channels() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let mut channels = Vec::new();
    for _ in 0..100 {
        channels.push(confirm_channel(&conn).await);
    }
    let q = temp_queue(&channels[0]).await;
    for (i, ch) in channels.iter().enumerate() {
        publish_confirmed(ch, "", &q, format!("{i}").as_bytes()).await;
    }
    assert_eq!(message_count(&channels[99], &q).await, 100);
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_opens_channels_with_explicit_ids() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let ch7 = conn.open_channel(Some(7)).await.expect("channel 7");
    let ch2047 = conn
        .open_channel(Some(2047))
        .await
        .expect("channel 2047 (channel_max)");
    assert_eq!((ch7.channel_id(), ch2047.channel_id()), (7, 2047));
    amqprs_temp_queue(&ch2047).await;
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn channel_flow_active_false_is_not_implemented() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    c.send_method(1, 20, 20, &[0]).await;
    let outcome = c.read_outcome().await;
    assert_eq!(
        outcome,
        Outcome::ConnectionClose(common::raw::CloseReason {
            code: 540,
            text: "NOT_IMPLEMENTED - active=false".into(),
            class_id: 20,
            method_id: 20
        })
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn channel_flow_active_true_is_acknowledged() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let active = ch
        .channel_flow(ChannelFlowOptions { active: true })
        .await
        .expect("flow-ok");
    assert!(active);
    broker.shutdown().await;
}

#[tokio::test]
async fn client_close_is_answered_and_the_channel_number_can_be_reused() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        20,
        40,
        &Enc::new().u16(200).short_str("bye").u16(0).u16(0).build(),
    )
    .await;
    c.expect_method(1, 20, 41).await;
    c.open_channel(1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn closing_one_channel_leaves_the_others_open() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let a = channel(&conn).await;
    let b = channel(&conn).await;
    let q = temp_queue(&b).await;
    a.close(200, "done".into()).await.unwrap();
    assert!(conn.status().connected());
    publish(&b, "", &q, b"still here").await;
    assert!(eventually(|| async { message_count(&b, &q).await == 1 }).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn after_a_server_channel_close_other_methods_on_it_are_ignored_until_close_ok() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    let missing = unique("missing");
    // passive queue.declare of a missing queue -> channel.close 404
    let passive = Enc::new()
        .u16(0)
        .short_str(&missing)
        .u8(0b0000_0001)
        .empty_table()
        .build();
    c.send_method(1, 50, 10, &passive).await;
    let (ch, class, method, args) = c.read_method().await.unwrap();
    assert_eq!((ch, class, method), (1, 20, 40));
    let reason = common::raw::decode_close(&args);
    assert_eq!(reason.code, 404);
    assert_eq!((reason.class_id, reason.method_id), (50, 10));
    // Before answering close-ok, send another method: it must be discarded.
    let declare = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    c.send(&method_frame(1, 50, 10, &declare)).await;
    c.send(&method_frame(1, 20, 41, &[])).await;
    // The channel can be opened again and works; the discarded declare produced
    // no declare-ok.
    c.send_method(1, 20, 10, &Enc::new().short_str("").build())
        .await;
    let (ch, class, method, _) = c.read_method().await.unwrap();
    assert_eq!(
        (ch, class, method),
        (1, 20, 11),
        "expected channel.open-ok, not a stray declare-ok"
    );
    c.send_method(1, 50, 10, &declare).await;
    let ok = c.expect_method(1, 50, 11).await;
    assert!(Dec::new(&ok).short_str().starts_with("amq.gen-"));
    broker.shutdown().await;
}

#[tokio::test]
async fn server_channel_close_names_the_offending_method() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(3).await;
    let missing = unique("missing");
    // exchange.declare passive of a missing exchange
    let args = Enc::new()
        .u16(0)
        .short_str(&missing)
        .short_str("direct")
        .u8(0b0000_0001)
        .empty_table()
        .build();
    c.send_method(3, 40, 10, &args).await;
    match c.read_outcome().await {
        Outcome::ChannelClose(3, r) => {
            assert_eq!(r.code, 404);
            assert_eq!(
                r.text,
                format!("NOT_FOUND - no exchange '{missing}' in vhost '/'")
            );
            assert_eq!((r.class_id, r.method_id), (40, 10));
        }
        other => panic!("expected channel.close on channel 3, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn deprecated_access_request_is_answered_with_ticket_one() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    // access.request realm="/data", bits: passive active write read
    c.send_method(
        1,
        30,
        10,
        &Enc::new().short_str("/data").u8(0b0001_1111).build(),
    )
    .await;
    let ok = c.expect_method(1, 30, 11).await;
    assert_eq!(Dec::new(&ok).u16(), 1);
    broker.shutdown().await;
}
