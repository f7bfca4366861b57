//! Publishing and consuming: returns, properties and field tables, large bodies,
//! consumer tags, exclusive consumers, round-robin, cancel, basic.get.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;

#[tokio::test]
async fn consumer_receives_published_messages_with_routing_info() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let mut consumer = consume(&ch, &q).await;
    publish(&ch, "", &q, b"hello").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"hello");
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), q);
    assert!(!d.redelivered);
    assert_eq!(
        d.delivery_tag, 1,
        "delivery tags start at 1 on each channel"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn server_generates_consumer_tags_starting_with_amq_ctag() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let c1 = consume(&ch, &q).await;
    let c2 = consume(&ch, &q).await;
    assert!(c1.tag().as_str().starts_with("amq.ctag-"), "{}", c1.tag());
    assert_ne!(c1.tag(), c2.tag());
    broker.shutdown().await;
}

#[tokio::test]
async fn client_chosen_consumer_tag_is_used() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let args = amqprs::channel::BasicConsumeArguments::new(&q, "my-tag")
        .manual_ack(false)
        .finish();
    let (tag, mut rx) = ch.basic_consume_rx(args).await.unwrap();
    assert_eq!(tag, "my-tag");
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"x".to_vec(),
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    let m = amqprs_next(&mut rx).await;
    assert_eq!(m.deliver.as_ref().unwrap().consumer_tag(), "my-tag");
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned_with_312_no_route() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let key = unique("nowhere");
    let confirm = ch
        .basic_publish(
            "amq.direct".into(),
            key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            BasicProperties::default().with_message_id("m1".into()),
        )
        .await
        .unwrap();
    let confirmation = within("confirm", confirm).await.unwrap();
    assert!(confirmation.is_ack(), "unroutable messages are still acked");
    let returned = confirmation
        .take_message()
        .expect("the message is returned first");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), key);
    assert_eq!(returned.delivery.data, b"bounce");
    assert_eq!(
        returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m1")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_sees_basic_return_for_mandatory_unroutable() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let key = unique("nowhere");
    let mut args = amqprs::channel::BasicPublishArguments::new("amq.direct", &key);
    args.mandatory = true;
    ch.basic_publish(amqprs::BasicProperties::default(), b"bounce".to_vec(), args)
        .await
        .unwrap();
    assert_eq!(
        next_chan_event(&mut events).await,
        ChanEvent::Return {
            code: 312,
            text: "NO_ROUTE".into(),
            exchange: "amq.direct".into(),
            routing_key: key,
            body: b"bounce".to_vec()
        }
    );
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn mandatory_routable_message_is_not_returned() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let confirm = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"ok",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let confirmation = within("confirm", confirm).await.unwrap();
    assert!(confirmation.is_ack());
    assert!(confirmation.take_message().is_none());
    assert_eq!(message_count(&ch, &q).await, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let x = unique("missing");
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"x".to_vec(),
        amqprs::channel::BasicPublishArguments::new(&x, "k"),
    )
    .await
    .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(code, 404);
    assert_eq!(text, format!("NOT_FOUND - no exchange '{x}' in vhost '/'"));
    // Only the channel is closed.
    let (ch2, _) = amqprs_channel(&conn).await;
    amqprs_temp_queue(&ch2).await;
    assert!(conn.is_open());
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn immediate_publish_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let (conn, mut conn_events) = broker.amqprs_with_events().await;
    let (ch, _) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let mut args = amqprs::channel::BasicPublishArguments::new("", &q);
    args.immediate = true;
    ch.basic_publish(amqprs::BasicProperties::default(), b"now".to_vec(), args)
        .await
        .unwrap();
    let (code, text) = expect_amqprs_connection_close(&mut conn_events).await;
    assert_eq!(code, 540);
    assert_eq!(text, "NOT_IMPLEMENTED - immediate=true");
    broker.shutdown().await;
}

#[tokio::test]
async fn user_id_must_match_the_authenticated_user() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let props = amqprs::BasicProperties::default()
        .with_user_id("mallory")
        .finish();
    ch.basic_publish(
        props,
        b"x".to_vec(),
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        format!("PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was '{}'", broker.target.user)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn one_mebibyte_body_round_trips_across_many_frames() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    publish_confirmed(&ch, "", &q, &body).await;
    let mut consumer = consume_no_ack(&ch, &q).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body, "body differs");
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_large_body_round_trips_through_basic_get() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        body.clone(),
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    let (_, mut rx) = amqprs_consume(&ch, &q, true).await;
    let m = amqprs_next(&mut rx).await;
    assert!(amqprs_body(&m) == body);
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn empty_body_round_trips() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_confirmed(&ch, "", &q, b"").await;
    let m = get(&ch, &q).await.expect("a message");
    assert!(m.delivery.data.is_empty());
    broker.shutdown().await;
}

fn every_field_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert(
        "inner".into(),
        AMQPValue::LongString(LongString::from(b"deep".to_vec())),
    );
    let mut t = FieldTable::default();
    t.insert("bool".into(), AMQPValue::Boolean(true));
    t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    t.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    t.insert("i16".into(), AMQPValue::ShortInt(-1600));
    t.insert("u16".into(), AMQPValue::ShortUInt(60000));
    t.insert("i32".into(), AMQPValue::LongInt(-320_000));
    t.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    t.insert("i64".into(), AMQPValue::LongLongInt(-6_400_000_000));
    t.insert("f32".into(), AMQPValue::Float(1.5));
    t.insert("f64".into(), AMQPValue::Double(-2.25));
    t.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    t.insert(
        "longstr".into(),
        AMQPValue::LongString(LongString::from(b"text \xe2\x9c\x93".to_vec())),
    );
    t.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString(LongString::from(b"two".to_vec())),
            AMQPValue::Boolean(false),
        ])),
    );
    t.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert("table".into(), AMQPValue::FieldTable(nested));
    t.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 255])),
    );
    t.insert("void".into(), AMQPValue::Void);
    t
}

fn all_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_field_type())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_001)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("warren-tests".into())
        .with_cluster_id("cluster-a".into())
}

#[tokio::test]
async fn all_fourteen_properties_round_trip() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let props = all_properties().with_user_id(broker.target.user.as_str().into());
    publish_confirmed_props(&ch, "", &q, b"props", props.clone()).await;
    let mut consumer = consume_no_ack(&ch, &q).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.properties, props);
    broker.shutdown().await;
}

#[tokio::test]
async fn every_field_table_value_type_round_trips_in_headers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let props = BasicProperties::default().with_headers(every_field_type());
    publish_confirmed_props(&ch, "", &q, b"types", props).await;
    let m = get(&ch, &q).await.expect("a message");
    let headers = m.delivery.properties.headers().clone().expect("headers");
    let expected = every_field_type();
    for (k, v) in expected.inner() {
        assert_eq!(headers.inner().get(k), Some(v), "header {k}");
    }
    assert_eq!(headers, expected);
    broker.shutdown().await;
}

fn sorted<K: std::fmt::Debug, V: std::fmt::Debug>(
    m: &std::collections::HashMap<K, V>,
) -> Vec<String> {
    let mut v: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}={v:?}")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn amqprs_properties_round_trip() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let mut headers = amqprs::FieldTable::new();
    headers.insert("n".try_into().unwrap(), amqprs::FieldValue::I(42));
    headers.insert(
        "s".try_into().unwrap(),
        amqprs::FieldValue::S("str".try_into().unwrap()),
    );
    let props = amqprs::BasicProperties::default()
        .with_content_type("text/plain")
        .with_content_encoding("utf-8")
        .with_headers(headers)
        .with_delivery_mode(1)
        .with_priority(3)
        .with_correlation_id("c")
        .with_reply_to("r")
        .with_expiration("1000000")
        .with_message_id("m")
        .with_timestamp(42)
        .with_message_type("t")
        .with_user_id(&broker.target.user)
        .with_app_id("a")
        .with_cluster_id("cl")
        .finish();
    ch.basic_publish(
        props.clone(),
        b"p".to_vec(),
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    let (_, mut rx) = amqprs_consume(&ch, &q, true).await;
    let m = amqprs_next(&mut rx).await;
    let got = m.basic_properties.expect("properties");
    assert_eq!(got.content_type(), props.content_type());
    assert_eq!(got.content_encoding(), props.content_encoding());
    let got_headers: &std::collections::HashMap<_, _> = got.headers().expect("headers").as_ref();
    let sent_headers: &std::collections::HashMap<_, _> = props.headers().unwrap().as_ref();
    assert_eq!(
        format!("{:?}", sorted(got_headers)),
        format!("{:?}", sorted(sent_headers))
    );
    assert_eq!(got.delivery_mode(), props.delivery_mode());
    assert_eq!(got.priority(), props.priority());
    assert_eq!(got.correlation_id(), props.correlation_id());
    assert_eq!(got.reply_to(), props.reply_to());
    assert_eq!(got.expiration(), props.expiration());
    assert_eq!(got.message_id(), props.message_id());
    assert_eq!(got.timestamp(), props.timestamp());
    assert_eq!(got.message_type(), props.message_type());
    assert_eq!(got.user_id(), props.user_id());
    assert_eq!(got.app_id(), props.app_id());
    assert_eq!(got.cluster_id(), props.cluster_id());
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn basic_get_reports_the_remaining_message_count() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    for b in ["a", "b", "c"] {
        publish_confirmed(&ch, "", &q, b.as_bytes()).await;
    }
    let m = get(&ch, &q).await.expect("a message");
    assert_eq!(m.delivery.data, b"a");
    assert_eq!(m.message_count, 2);
    assert_eq!(m.delivery.routing_key.as_str(), q);
    assert!(!m.delivery.redelivered);
    let m = get(&ch, &q).await.unwrap();
    assert_eq!(m.message_count, 1);
    let m = get(&ch, &q).await.unwrap();
    assert_eq!(m.message_count, 0);
    assert!(get(&ch, &q).await.is_none(), "get-empty");
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_basic_get_and_get_empty() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let get_args = amqprs::channel::BasicGetArguments::new(&q)
        .no_ack(true)
        .finish();
    assert!(ch.basic_get(get_args.clone()).await.unwrap().is_none());
    for b in ["one", "two"] {
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            b.as_bytes().to_vec(),
            amqprs::channel::BasicPublishArguments::new("", &q),
        )
        .await
        .unwrap();
    }
    // Publishes are asynchronous; poll until the first one is there.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let got = loop {
        if let Some(m) = ch.basic_get(get_args.clone()).await.unwrap() {
            break Some(m);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    };
    let (get_ok, _, body) = got.unwrap();
    assert_eq!(body, b"one");
    assert_eq!(get_ok.message_count(), 1);
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn basic_get_on_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("missing");
    assert_amqp_error(
        ch.basic_get(q.as_str().into(), BasicGetOptions::default()),
        404,
        &format!("NOT_FOUND - no queue '{q}' in vhost '/'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn consuming_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("missing");
    assert_amqp_error(
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no queue '{q}' in vhost '/'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_a_channel_closes_the_connection_with_530() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let _first = ch
        .basic_consume(
            q.as_str().into(),
            "dup".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    assert_amqp_error(
        ch.basic_consume(
            q.as_str().into(),
            "dup".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
        530,
        "NOT_ALLOWED - attempt to reuse consumer tag 'dup'",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_same_consumer_tag_may_be_used_on_different_channels() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch1 = channel(&conn).await;
    let ch2 = channel(&conn).await;
    let q = temp_queue(&ch1).await;
    let _c1 = ch1
        .basic_consume(
            q.as_str().into(),
            "same".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let _c2 = ch2
        .basic_consume(
            q.as_str().into(),
            "same".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    assert_eq!(consumer_count(&ch1, &q).await, 2);
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_consumer_blocks_other_consumers_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let _exclusive = consume_opts(
        &ch,
        &q,
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let ch2 = channel(&conn).await;
    assert_amqp_error(
        ch2.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
        403,
        &format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_consume_fails_with_403_when_the_queue_has_consumers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let _existing = consume(&ch, &q).await;
    let ch2 = channel(&conn).await;
    assert_amqp_error(
        ch2.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        ),
        403,
        &format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn no_ack_consumer_removes_messages_on_delivery() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let cch = channel(&conn).await;
    let mut consumer = consume_no_ack(&cch, &q).await;
    publish_confirmed(&ch, "", &q, b"gone").await;
    assert_eq!(next(&mut consumer).await.data, b"gone");
    // Closing the consuming channel does not bring it back.
    cch.close(200, "bye".into()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn consumers_on_one_queue_receive_messages_round_robin() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let c1ch = channel(&conn).await;
    let c2ch = channel(&conn).await;
    let mut c1 = consume_no_ack(&c1ch, &q).await;
    let mut c2 = consume_no_ack(&c2ch, &q).await;
    for n in 1..=6 {
        publish_confirmed(&ch, "", &q, format!("{n}").as_bytes()).await;
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..3 {
        got1.push(body_str(&next(&mut c1).await));
        got2.push(body_str(&next(&mut c2).await));
    }
    assert_eq!(got1, ["1", "3", "5"]);
    assert_eq!(got2, ["2", "4", "6"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn basic_cancel_stops_deliveries_and_leaves_messages_queued() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let cch = channel(&conn).await;
    let mut consumer = consume_no_ack(&cch, &q).await;
    publish_confirmed(&ch, "", &q, b"before").await;
    assert_eq!(next(&mut consumer).await.data, b"before");
    cch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("basic.cancel");
    expect_consumer_end(&mut consumer).await;
    publish_confirmed(&ch, "", &q, b"after").await;
    assert_eq!(consumer_count(&ch, &q).await, 0);
    assert_eq!(drain(&ch, &q).await, bodies(["after"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn cancelling_an_unknown_consumer_tag_succeeds() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    ch.basic_cancel("no-such-consumer".into(), BasicCancelOptions::default())
        .await
        .expect("basic.cancel of an unknown tag is answered with cancel-ok");
    temp_queue(&ch).await; // the channel is still open
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_a_queue_sends_basic_cancel_to_its_consumers() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = unique("cancelled");
    ch.queue_declare(amqprs::channel::QueueDeclareArguments::new(&q))
        .await
        .unwrap();
    let (tag, _rx) = amqprs_consume(&ch, &q, false).await;
    let (other, _) = amqprs_channel(&conn).await;
    other
        .queue_delete(amqprs::channel::QueueDeleteArguments::new(&q))
        .await
        .unwrap();
    assert_eq!(
        next_chan_event(&mut events).await,
        ChanEvent::Cancel { consumer_tag: tag }
    );
    // The channel stays open.
    amqprs_temp_queue(&ch).await;
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn lapin_consumer_ends_when_its_queue_is_deleted() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = shared_queue(&ch).await;
    let mut consumer = consume(&ch, &q).await;
    let other = channel(&conn).await;
    other
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    expect_consumer_end(&mut consumer).await;
    broker.shutdown().await;
}

/// A no-ack consumer that stops reading for a while lets several MiB of
/// deliveries pile up in the broker's writer; once it reads again it must get
/// every message (the connection resumes when the writer drains).
#[tokio::test]
async fn slow_no_ack_consumer_resumes_after_the_socket_drains() {
    use common::raw::{Enc, Frame, RawConn};
    const N: usize = 8_000;
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = shared_queue(&ch).await;
    let body = vec![b'x'; 1024];
    for _ in 0..N {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    ch.wait_for_confirms().await.expect("confirms");
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    let consume = Enc::new()
        .u16(0)
        .short_str(&q)
        .short_str("slow")
        .u8(0b10) // no_ack
        .empty_table()
        .build();
    c.send_method(1, 60, 20, &consume).await;
    // Not reading: the socket buffers fill and the broker's writer backs up.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut delivered = 0;
    while delivered < N {
        let frame = c.read_frame().await.expect("deliveries keep coming");
        if let Frame::Method {
            class: 60,
            method: 60,
            ..
        } = frame
        {
            delivered += 1;
        }
    }
    assert_eq!(delivered, N);
    broker.shutdown().await;
}

/// The connection remembers exchanges it published to; deleting one (from
/// another connection) must still make the next publish fail with 404.
#[tokio::test]
async fn publishing_to_an_exchange_deleted_since_the_last_publish_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let x = unique("gone");
    let q = amqprs_temp_queue(&ch).await;
    ch.exchange_declare(amqprs::channel::ExchangeDeclareArguments::new(&x, "fanout"))
        .await
        .unwrap();
    ch.queue_bind(amqprs::channel::QueueBindArguments::new(&q, &x, ""))
        .await
        .unwrap();
    let publish = |body: &'static [u8]| {
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            body.to_vec(),
            amqprs::channel::BasicPublishArguments::new(&x, ""),
        )
    };
    publish(b"first").await.unwrap();
    // A round trip on the same channel: the publish has been routed.
    let mut passive = amqprs::channel::QueueDeclareArguments::new(&q);
    passive.passive(true);
    let (_, messages, _) = ch.queue_declare(passive).await.unwrap().unwrap();
    assert_eq!(messages, 1);
    let other = broker.amqprs().await;
    let (och, _) = amqprs_channel(&other).await;
    och.exchange_delete(amqprs::channel::ExchangeDeleteArguments::new(&x))
        .await
        .unwrap();
    publish(b"second").await.unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(code, 404);
    assert_eq!(text, format!("NOT_FOUND - no exchange '{x}' in vhost '/'"));
    broker.shutdown().await;
}
