//! Behaviour under a non-default configuration (the "alt" profile: frame_max
//! 8192, channel_max 16, heartbeat 10, max_message_size 10000, an extra vhost and
//! users). These tests skip themselves against a default-configured external
//! broker; set WARRENMQ_TEST_ALT_URL to validate them against RabbitMQ started by
//! tests/rabbitmq/start-alt-node.sh.

mod common;

use common::raw::{frame, header_frame, method_frame, Enc, Outcome, RawConn, Tune, FRAME_BODY};
use common::*;
use lapin::options::*;

#[tokio::test]
async fn tune_offers_the_configured_limits() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    let tune = c.read_tune().await;
    assert_eq!(
        tune,
        Tune {
            channel_max: alt::CHANNEL_MAX,
            frame_max: alt::FRAME_MAX,
            heartbeat: alt::HEARTBEAT
        }
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn lapin_and_amqprs_adopt_the_configured_limits() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let conn = broker.lapin().await;
    assert_eq!(conn.configuration().frame_max(), alt::FRAME_MAX);
    assert_eq!(conn.configuration().channel_max(), alt::CHANNEL_MAX);
    let aconn = broker.amqprs().await;
    assert_eq!(
        (aconn.frame_max(), aconn.channel_max()),
        (alt::FRAME_MAX, alt::CHANNEL_MAX)
    );
    aconn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn message_larger_than_frame_max_is_split_and_reassembled() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let body: Vec<u8> = (0..9_999u32).map(|i| (i % 7) as u8).collect();
    publish_confirmed(&ch, "", &q, &body).await;
    assert_eq!(get_body(&ch, &q).await, Some(body));
    broker.shutdown().await;
}

#[tokio::test]
async fn frame_larger_than_the_configured_frame_max_closes_the_connection_with_501() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let (mut c, tune) = RawConn::open_connection(&broker).await;
    assert_eq!(tune.frame_max, alt::FRAME_MAX);
    c.open_channel(1).await;
    let publish = Enc::new()
        .u16(0)
        .short_str("")
        .short_str("nowhere")
        .u8(0)
        .build();
    c.send(&method_frame(1, 60, 40, &publish)).await;
    c.send(&header_frame(1, 9000)).await;
    c.send_lenient(&frame(FRAME_BODY, 1, &vec![0u8; 9000]))
        .await;
    match c.read_outcome().await {
        Outcome::ConnectionClose(r) => {
            assert_eq!(r.code, 501);
            assert_eq!(
                r.text,
                "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,9000,8184}"
            );
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
    common::raw::assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn message_larger_than_max_message_size_closes_the_channel_with_406() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let size = alt::MAX_MESSAGE_SIZE as usize + 1;
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        vec![1u8; size],
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - message size {size} is larger than configured max size {}",
            alt::MAX_MESSAGE_SIZE
        )
    );
    assert!(conn.is_open());
    broker.shutdown().await;
}

#[tokio::test]
async fn message_of_exactly_max_message_size_is_accepted() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_confirmed(&ch, "", &q, &vec![2u8; alt::MAX_MESSAGE_SIZE as usize]).await;
    assert_eq!(message_count(&ch, &q).await, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn opening_more_than_the_configured_channel_max_closes_the_connection_with_530() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let (mut c, tune) = RawConn::open_connection(&broker).await;
    assert_eq!(tune.channel_max, alt::CHANNEL_MAX);
    for ch in 1..=alt::CHANNEL_MAX {
        c.open_channel(ch).await;
    }
    c.send_method(
        alt::CHANNEL_MAX + 1,
        20,
        10,
        &Enc::new().short_str("").build(),
    )
    .await;
    let r = c.expect_connection_close().await;
    assert_eq!(r.code, 530);
    assert_eq!(
        r.text,
        format!(
            "NOT_ALLOWED - number of channels opened ({0}) has reached the negotiated channel_max ({0})",
            alt::CHANNEL_MAX
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn user_with_access_opens_the_configured_vhost() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let (user, pw) = alt::ALICE;
    let conn = broker
        .lapin_as(user, pw, alt::VHOST)
        .await
        .expect("alice may use warren-alt");
    let ch = channel(&conn).await;
    temp_queue(&ch).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn user_without_access_to_a_vhost_is_refused_with_530() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let (user, pw) = alt::ALICE;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(user, pw).await;
    let tune = c.read_tune().await;
    c.tune_ok(Tune {
        heartbeat: 0,
        ..tune
    })
    .await;
    c.open("/").await;
    let r = c.expect_connection_close().await;
    assert_eq!(r.code, 530);
    assert_eq!(
        r.text,
        "NOT_ALLOWED - access to vhost '/' refused for user 'alice'"
    );
    assert_eq!((r.class_id, r.method_id), (10, 40));
    broker.shutdown().await;
}

#[tokio::test]
async fn user_without_any_vhost_is_refused_with_530_by_lapin() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let (user, pw) = alt::BOB;
    let (code, text) = expect_amqp_error(broker.lapin_as(user, pw, alt::VHOST).await.map(|_| ()));
    assert_eq!(code, 530);
    assert_eq!(
        text,
        format!(
            "NOT_ALLOWED - access to vhost '{}' refused for user 'bob'",
            alt::VHOST
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn wrong_password_for_a_configured_user_is_refused_with_403() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let (code, text) = expect_amqp_error(
        broker
            .lapin_as(alt::ALICE.0, "nope", alt::VHOST)
            .await
            .map(|_| ()),
    );
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn vhosts_are_isolated() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let default = broker.lapin().await;
    let dch = channel(&default).await;
    let q = shared_queue(&dch).await;
    let (user, pw) = alt::ALICE;
    let other = broker.lapin_as(user, pw, alt::VHOST).await.unwrap();
    let och = channel(&other).await;
    assert_amqp_error(
        och.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no queue '{q}' in vhost '{}'", alt::VHOST),
    )
    .await;
    // Same name, different vhost: an independent queue.
    let och = channel(&other).await;
    och.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::exclusive(),
        no_args(),
    )
    .await
    .unwrap();
    let och2 = confirm_channel(&other).await;
    publish_confirmed(&och2, "", &q, b"alt").await;
    assert_eq!(message_count(&dch, &q).await, 0);
    assert_eq!(message_count(&och2, &q).await, 1);
    delete_queue(&default, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn every_vhost_has_the_builtin_exchanges() {
    let Some(broker) = TestBroker::start_alt().await else {
        return;
    };
    let (user, pw) = alt::ALICE;
    let conn = broker.lapin_as(user, pw, alt::VHOST).await.unwrap();
    for x in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        assert!(exchange_exists(&conn, x).await, "{x} in {}", alt::VHOST);
    }
    broker.shutdown().await;
}
