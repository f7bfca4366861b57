//! Hard (connection-level) errors: the server sends connection.close with the
//! exact reply code, text and offending method, closes every channel of that
//! connection, and other connections are unaffected.

mod common;

use common::raw::{CloseReason, Enc, Outcome, RawConn};
use common::*;

/// Opens a raw connection with channel 1, sends one method and returns the
/// connection.close reason; checks that the socket is closed after close-ok and
/// that a second connection still works.
async fn raw_hard_error(
    broker: &TestBroker,
    setup: &[(u16, u16, Vec<u8>)],
    class: u16,
    method: u16,
    args: Vec<u8>,
) -> CloseReason {
    let (mut c, _) = RawConn::open_connection(broker).await;
    c.open_channel(1).await;
    for (cl, m, a) in setup {
        c.send_method(1, *cl, *m, a).await;
        let (_, rc, rm, _) = c.read_method().await.expect("setup reply");
        assert_eq!(rc, *cl, "setup reply class");
        let _ = rm;
    }
    c.send_method(1, class, method, &args).await;
    let reason = match c.read_outcome().await {
        Outcome::ConnectionClose(r) => r,
        other => panic!("expected connection.close, got {other:?}"),
    };
    assert!(
        c.wait_eof().await,
        "the server closes the socket after close-ok"
    );
    common::raw::assert_broker_still_serves(broker).await;
    reason
}

fn server_named_exclusive_queue() -> (u16, u16, Vec<u8>) {
    (
        50,
        10,
        Enc::new()
            .u16(0)
            .short_str("")
            .u8(0b0000_1100)
            .empty_table()
            .build(),
    )
}

#[tokio::test]
async fn reused_consumer_tag_closes_the_connection_with_530() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    let (cl, m, a) = server_named_exclusive_queue();
    c.send_method(1, cl, m, &a).await;
    let ok = c.expect_method(1, 50, 11).await;
    let q = common::raw::Dec::new(&ok).short_str();
    let consume = Enc::new()
        .u16(0)
        .short_str(&q)
        .short_str("tag-1")
        .u8(0)
        .empty_table()
        .build();
    c.send_method(1, 60, 20, &consume).await;
    c.expect_method(1, 60, 21).await;
    c.send_method(1, 60, 20, &consume).await;
    match c.read_outcome().await {
        Outcome::ConnectionClose(r) => assert_eq!(
            r,
            CloseReason {
                code: 530,
                text: "NOT_ALLOWED - attempt to reuse consumer tag 'tag-1'".into(),
                class_id: 60,
                method_id: 20
            }
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
    common::raw::assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn immediate_publish_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    // basic.publish with immediate (bit 1)
    let publish = Enc::new()
        .u16(0)
        .short_str("")
        .short_str("q")
        .u8(0b0000_0010)
        .build();
    c.send(&common::raw::method_frame(1, 60, 40, &publish))
        .await;
    c.send(&common::raw::header_frame(1, 1)).await;
    c.send(&common::raw::frame(common::raw::FRAME_BODY, 1, b"x"))
        .await;
    match c.read_outcome().await {
        Outcome::ConnectionClose(r) => assert_eq!(
            r,
            CloseReason {
                code: 540,
                text: "NOT_IMPLEMENTED - immediate=true".into(),
                class_id: 60,
                method_id: 40
            }
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
    common::raw::assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_exchange_type_closes_the_connection_with_503() {
    let broker = TestBroker::start().await;
    let x = unique("x");
    let args = Enc::new()
        .u16(0)
        .short_str(&x)
        .short_str("x-nope")
        .u8(0)
        .empty_table()
        .build();
    let r = raw_hard_error(&broker, &[], 40, 10, args).await;
    assert_eq!(
        r,
        CloseReason {
            code: 503,
            text: "COMMAND_INVALID - unknown exchange type 'x-nope'".into(),
            class_id: 40,
            method_id: 10
        }
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn prefetch_size_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let args = Enc::new().u32(4096).u16(10).u8(0).build();
    let r = raw_hard_error(&broker, &[], 60, 10, args).await;
    assert_eq!(
        r,
        CloseReason {
            code: 540,
            text: "NOT_IMPLEMENTED - prefetch_size!=0 (4096)".into(),
            class_id: 60,
            method_id: 10
        }
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn basic_recover_without_requeue_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let r = raw_hard_error(&broker, &[], 60, 110, vec![0]).await;
    assert_eq!(
        r,
        CloseReason {
            code: 540,
            text: "NOT_IMPLEMENTED - requeue=false".into(),
            class_id: 60,
            method_id: 110
        }
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_hard_error_closes_every_channel_of_the_connection() {
    let broker = TestBroker::start().await;
    let (conn, mut conn_events) = broker.amqprs_with_events().await;
    let (a, _) = amqprs_channel(&conn).await;
    let (b, _) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&a).await;
    let mut args = amqprs::channel::BasicPublishArguments::new("", &q);
    args.immediate = true;
    b.basic_publish(amqprs::BasicProperties::default(), b"x".to_vec(), args)
        .await
        .unwrap();
    let (code, _) = expect_amqprs_connection_close(&mut conn_events).await;
    assert_eq!(code, 540);
    let closed = wait_for(|| !a.is_open() && !b.is_open() && !conn.is_open(), TIMEOUT).await;
    assert!(closed, "all channels close with the connection");
    // The exclusive queue went with the connection; a new connection works.
    let other = broker.lapin().await;
    assert!(eventually(|| async { !queue_exists(&other, &q).await }).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_hard_error_on_one_connection_does_not_affect_another() {
    let broker = TestBroker::start().await;
    let bystander = broker.lapin().await;
    let bch = confirm_channel(&bystander).await;
    let q = temp_queue(&bch).await;
    let victim = broker.lapin().await;
    let vch = channel(&victim).await;
    let vq = temp_queue(&vch).await;
    let _c = vch
        .basic_consume(
            vq.as_str().into(),
            "t".into(),
            Default::default(),
            no_args(),
        )
        .await
        .unwrap();
    let _ = vch
        .basic_consume(
            vq.as_str().into(),
            "t".into(),
            Default::default(),
            no_args(),
        )
        .await;
    publish_confirmed(&bch, "", &q, b"unaffected").await;
    assert_eq!(
        get_body(&bch, &q).await.as_deref(),
        Some(&b"unaffected"[..])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn non_connection_method_on_channel_zero_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    let declare = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    c.send_method(0, 50, 10, &declare).await;
    match c.read_outcome().await {
        Outcome::ConnectionClose(r) => {
            assert_eq!(r.code, 504, "{r:?}");
            assert_eq!(
                r.text,
                "CHANNEL_ERROR - unexpected method in connection state running"
            );
            assert_eq!((r.class_id, r.method_id), (50, 10));
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
    common::raw::assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn after_connection_close_the_server_ignores_everything_but_close_ok() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    c.send_method(1, 60, 110, &[0]).await; // basic.recover requeue=false -> 540
    let (ch, class, method, _) = c.read_method().await.unwrap();
    assert_eq!((ch, class, method), (0, 10, 50));
    // Anything but close-ok is discarded: no declare-ok comes back.
    let declare = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    c.send_lenient(&common::raw::method_frame(1, 50, 10, &declare))
        .await;
    c.send_lenient(&common::raw::method_frame(0, 10, 51, &[]))
        .await;
    loop {
        match c.read_frame().await {
            None => break,
            Some(common::raw::Frame::Heartbeat { .. }) => continue,
            Some(other) => panic!("nothing but EOF may follow close-ok: {other:?}"),
        }
    }
    broker.shutdown().await;
}
